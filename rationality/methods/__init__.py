"""Adaptation methods (zero-shot, linear probe, full fine-tuning, ...) behind one registry."""

from rationality.methods.base import AdaptationMethod, create_method, list_methods, method_class, register_method

__all__ = ["AdaptationMethod", "create_method", "list_methods", "method_class", "register_method"]
