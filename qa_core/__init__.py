"""Core library for fine-tuning extractive question-answering models."""
