"""Learning a model: the recipes and their defaults (recipes, torch-free), gallery photos in and
augmented (augmentation), the margin losses (losses), the training loop and its checkpoints
(loop), curves (plots), a malloc setting that speeds training up (memory), and a face prior
learned from other people's faces (pretrain).
"""
