"""facerank in a dozen lines: train on a gallery, index it, ask about a held-out photo.

    python examples/quickstart.py [GALLERY] [STORE]

Uses only the public API. From random initialisation (no download), at the demo's small size.
"""

import json
import sys
from pathlib import Path

import facerank

gallery = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "gallery"
store_folder = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("facerank-quickstart")

result = facerank.train(gallery, store_folder, facerank.preset("scratch", epochs=30),
                        weights="none", show_progress=True)
print(f"held-out accuracy: {result.test_accuracy:.1%}")

store = facerank.open(store_folder)
split = json.loads((store_folder / "train" / "split.json").read_text())
paths, people = zip(*split["train"])
store.add(paths, person=people)  # index the training images only: the test photo is unseen

# The first held-out photo with a face the store's face step finds (any, without a face step).
photo, truth = next((item for item in split["test"] if store.find_faces(item[0])),
                    split["test"][0])
[answer] = store.identify(photo, k=3, top_k=3, every=False)  # the largest face's answer
matches, people = answer.matches, answer.people
print(f"{photo} (truly {truth}):")
for p in people:
    print(f"  {p.person:>6} {p.probability:6.1%}")
for m in matches:
    print(f"  closest #{m.rank + 1}: {m.person} at {m.distance:.3f} ({m.path})")
