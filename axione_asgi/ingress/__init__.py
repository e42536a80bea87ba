"""What clients speak: one module per dialect, over the shared exchange pipeline."""
