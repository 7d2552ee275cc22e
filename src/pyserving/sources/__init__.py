"""Sources of servable versions (file-system storage paths) and their adapters."""
