"""LightningModules (classifier, conditional GAN) and their metrics. Never imports datamodules."""
