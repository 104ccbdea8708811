"""Evaluation: verifiable constraints and the gold reward, benchmark prompts, batched generation, win rates."""
