"""Fine-tuning and pretraining: recipes and the training loop (loop), and a face prior learned
from other people's faces (pretrain).
"""
