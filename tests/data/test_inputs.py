"""Reading templates and photos (``vec2face_tf.data.inputs``): values, and named errors."""

import json

import numpy as np
import pytest

from vec2face_tf.data import inputs

METADATA = {"engine": "dlib", "embedding_dim": 4,
            "crop": {"method": "dlib_5point", "size": 150, "padding": 0.25}}


def test_json_and_npy_templates_read_the_same_vector(tmp_path):
    vector = np.array([0.5, -0.5, 0.5, 0.5], np.float32)
    np.save(tmp_path / "v.npy", vector[None].astype(np.float64))
    (tmp_path / "v.json").write_text(json.dumps({"embedding": vector.tolist(), "engine": "dlib"}))
    for name in ("v.npy", "v.json"):
        loaded = inputs.load_vector(tmp_path / name, METADATA)
        assert loaded.dtype == np.float32 and loaded.shape == (4,)
        np.testing.assert_array_equal(loaded, vector)


def test_templates_of_another_engine_or_size_are_refused_by_name(tmp_path):
    (tmp_path / "sface.json").write_text(json.dumps({"embedding": [0.5] * 4, "engine": "sface"}))
    with pytest.raises(inputs.InputError, match="engine 'sface', but this model inverts 'dlib'"):
        inputs.load_vector(tmp_path / "sface.json", METADATA)
    with pytest.raises(inputs.InputError, match="vector has 3 values but this model inverts "
                                                "dlib vectors of D=4"):
        inputs.check_vector(np.ones(3), METADATA)
    with pytest.raises(inputs.InputError, match="must end in .npy or .json"):
        inputs.load_vector(tmp_path / "v.txt", METADATA)


def test_skimage_samples_load_as_rgb_and_unknown_names_are_refused():
    astronaut = inputs.load_photo("skimage:astronaut")
    assert astronaut.shape == (512, 512, 3) and astronaut.dtype == np.uint8
    camera = inputs.load_photo("skimage:camera")  # grey: repeated into 3 channels
    assert camera.shape[-1] == 3 and np.array_equal(camera[..., 0], camera[..., 2])
    with pytest.raises(inputs.InputError, match="is not a scikit-image sample image"):
        inputs.load_photo("skimage:download_all")


def test_photos_that_are_not_images_or_have_no_face_are_refused(tmp_path):
    (tmp_path / "notes.png").write_text("not a png")
    with pytest.raises(inputs.InputError, match="not an image format that Pillow reads"):
        inputs.load_photo(tmp_path / "notes.png")
    with pytest.raises(inputs.InputError, match="does not exist"):
        inputs.load_photo(tmp_path / "missing.jpg")
    with pytest.raises(inputs.InputError, match="no face found in grey"):
        inputs.align_photo(np.full((200, 200, 3), 128, np.uint8), METADATA, "grey")


def test_the_astronaut_aligns_to_the_model_crop():
    crop, faces = inputs.align_photo(inputs.load_photo("skimage:astronaut"), METADATA,
                                     "astronaut")
    assert faces == 1 and crop.shape == (150, 150, 3) and crop.dtype == np.uint8


def _write_templates(root, vectors_by_identity):
    for identity, vectors in vectors_by_identity.items():
        (root / identity).mkdir(parents=True)
        for index, vector in enumerate(vectors):
            np.save(root / identity / f"{index}.npy", np.asarray(vector, np.float32))


def test_a_template_folder_loads_as_unit_vectors_by_identity(tmp_path):
    _write_templates(tmp_path / "t", {"bob": [[2, 0, 0, 0], [0, 3, 0, 0]], "al": [[0, 0, 0, 5]]})
    (tmp_path / "t" / "al" / "extra.json").write_text(
        json.dumps({"embedding": [0, 0, 1, 1], "engine": "dlib"}))
    assert inputs.is_template_folder(tmp_path / "t")
    faces = inputs.load_template_folder(tmp_path / "t", METADATA)
    assert faces.identity_names.tolist() == ["al", "bob"]
    np.testing.assert_array_equal(faces.labels, [0, 0, 1, 1])  # al/0, al/extra, bob/0, bob/1
    np.testing.assert_allclose(faces.embeddings, [[0, 0, 0, 1], [0, 0, 2 ** -0.5, 2 ** -0.5],
                                                  [1, 0, 0, 0], [0, 1, 0, 0]], atol=1e-7)
    assert faces.crops.shape == (4, 0, 0, 3) and len(faces) == 4
    assert len(set(faces.hashes.tolist())) == 4


def test_a_template_folder_names_the_file_it_cannot_use(tmp_path):
    _write_templates(tmp_path / "t", {"bob": [[1, 0, 0, 0]]})
    (tmp_path / "t" / "bob" / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(inputs.InputError, match="photo.jpg is not a template"):
        inputs.load_template_folder(tmp_path / "t", METADATA)
    (tmp_path / "t" / "bob" / "photo.jpg").unlink()
    (tmp_path / "t" / "bob" / "sface.json").write_text(
        json.dumps({"embedding": [1, 0, 0, 0], "engine": "sface"}))
    with pytest.raises(inputs.InputError, match="sface.json holds a vector of engine 'sface'"):
        inputs.load_template_folder(tmp_path / "t", METADATA)
    (tmp_path / "t" / "bob" / "sface.json").unlink()
    np.save(tmp_path / "t" / "bob" / "nan.npy", np.array([np.nan, 0, 0, 1], np.float32))
    with pytest.raises(inputs.InputError, match="nan.npy"):
        inputs.load_template_folder(tmp_path / "t", METADATA)
    (tmp_path / "photos" / "bob").mkdir(parents=True)
    (tmp_path / "photos" / "bob" / "a.jpg").write_bytes(b"\xff\xd8")
    assert not inputs.is_template_folder(tmp_path / "photos")
    assert not inputs.is_template_folder(tmp_path / "missing")
