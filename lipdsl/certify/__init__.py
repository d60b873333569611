"""Certification: (Sdp, Solution) -> Certificate (point mapped back, every LMI re-checked)."""
