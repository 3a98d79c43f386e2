"""Faces drawn on a photo: boxes, landmarks and labels, for people who would rather look."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw

from facerank.faces.detection import Face

COLOURS = ((46, 204, 113), (52, 152, 219), (231, 76, 60), (241, 196, 15), (155, 89, 182))


def draw_faces(image: Image.Image, faces: Sequence[Face],
               labels: Sequence[str] | None = None) -> Image.Image:
    """A copy of ``image`` with each face's box, its 5 landmarks and an optional label.

    >>> photo = facerank.load_image("group.jpg")
    >>> faces = store.find_faces(photo)                  # boxes and landmarks, largest first
    >>> drawn = facerank.draw_faces(photo, faces, ["ada", "alan"])
    >>> drawn.save("drawn.png"); drawn.size == photo.size
    True
    """
    out = image.convert("RGB").copy()
    pen = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    for number, face in enumerate(faces):
        colour = COLOURS[number % len(COLOURS)]
        pen.rectangle(face.box, outline=colour, width=width)
        for x, y in face.landmarks:
            pen.ellipse((x - width, y - width, x + width, y + width), fill=colour)
        text = labels[number] if labels else str(number + 1)
        left, top = face.box[0], max(0, face.box[1] - 12 - width)
        pen.rectangle(pen.textbbox((left, top), text), fill=colour)
        pen.text((left, top), text, fill=(0, 0, 0))
    return out
