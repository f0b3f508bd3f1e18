"""The push: each committed cascade to every cascadeUpdates subscriber (see pusher.py)."""
