"""Every face in a photo: who each one is, drawn on the photo.

    python examples/quickstart.py                 # trains and indexes facerank-quickstart/
    python examples/group_photo.py [STORE] [OUT.png]

Makes a 'group photo' from three people of the bundled ORL subset, asks the store about every
face in it, and writes the photo with each face's box and top name. Uses only the public API.
"""

import sys
from pathlib import Path

from PIL import Image

import facerank

store_folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("facerank-quickstart")
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("group-photo.png")
gallery = Path(__file__).parent / "gallery"

group = Image.new("RGB", (720, 400), (150, 150, 150))
for number, person in enumerate(["s2", "s5", "s9"]):
    face = facerank.load_image(gallery / person / "10.pgm").resize((147, 179))
    group.paste(face, (60 + number * 230, 90 + 40 * (number % 2)))

faces = facerank.identify(group, store=store_folder, k=1)
for face in faces:
    name = face.people[0].person
    print(f"face at {face.box}: {name} ({face.people[0].probability:.0%}), "
          f"closest {face.matches[0].path}")
labels = [face.people[0].person for face in faces]
facerank.draw_faces(group, [face.face for face in faces], labels).save(out)
print(f"drawn: {out}")
