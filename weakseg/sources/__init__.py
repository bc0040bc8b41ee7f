"""Supervision sources: what each kind of cheap label turns into for training (CAMs, boxes, points...)."""
