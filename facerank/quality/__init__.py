"""How good a trained store is: held-out evaluation (evaluate), same-person thresholds
(calibrate), pair scores and curves (verification), and the gallery's health (doctor).
"""
