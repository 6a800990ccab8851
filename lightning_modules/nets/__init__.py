"""Plain nn.Modules: classifier backbones, conditional generator and discriminator."""
