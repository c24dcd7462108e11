"""Parameter storage and scoring with numpy (never torch)."""
