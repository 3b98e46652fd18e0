"""The built-in model adapters, declared: listing or checking their names imports none of them.

Each module imports its model library (open_clip, transformers, timm) and registers its adapter when
an adapter of that name is first built.
"""

from rationality.models.base import declare_adapter

declare_adapter("albef", "rationality.models.albef")
declare_adapter("blip", "rationality.models.blip")
declare_adapter("open_clip", "rationality.models.openclip")
declare_adapter("transformers", "rationality.models.hf_clip")
