"""Evaluation: zero-shot retrieval (more — zero-shot classification, linear probe — comes with finetuning)."""

from mmkit.eval.retrieval import retrieval_recall

__all__ = ["retrieval_recall"]
