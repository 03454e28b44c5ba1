import pathlib

import pytest


@pytest.fixture(scope="session")
def small_faces(faces_dev, tmp_path_factory) -> pathlib.Path:
    """16 faces-dev identities with 3 photos each, linked into a temporary folder."""
    root = tmp_path_factory.mktemp("small_faces")
    identities = [d for d in sorted(faces_dev.iterdir())
                  if d.is_dir() and len(list(d.glob("*.jpg"))) >= 3][::30][:16]
    for identity in identities:
        (root / identity.name).mkdir()
        for photo in sorted(identity.glob("*.jpg"))[:3]:
            (root / identity.name / photo.name).symlink_to(photo)
    return root
