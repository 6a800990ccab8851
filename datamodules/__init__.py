"""LightningDataModules: mnist, medmnist, mura, synthetic sets; few-shot sampling; caches.

Datamodules never import lightning_modules; they meet in tasks/. A datamodule tells the task
what the model needs through plain attributes: num_classes, class_names, image_size, channels.
"""
