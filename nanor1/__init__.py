"""nanor1: DeepSeek-R1 rebuilt from scratch on PyTorch."""
