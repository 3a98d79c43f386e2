"""The face step: detect faces and their 5 landmarks, align each to the network's input
(detection), detections cached per file content (cache), boxes drawn on a photo (drawing).
"""
