"""What comes in: images of any kind (images), files by path or URI (sources), and galleries laid out
one folder per person, with their train / held-out split (gallery).
"""
