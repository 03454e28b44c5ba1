"""vec2face_tf: DiBiGAN face reconstruction from blackbox face-recognition features."""

import pathlib
import re

from setuptools import find_namespace_packages, setup

ROOT = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (ROOT / "vec2face_tf" / "__init__.py").read_text()).group(1)

# The pinned set measured to co-install and work offline (DESIGN §5, notes/deps.md).
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "absl-py==2.5.1",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",  # undeclared runtime dependency of tfds 4.9.10
    "ai-edge-litert==2.3.0",
    "tf2onnx==1.17.0",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "tensorflow-serving-api==2.21.0",
    "dlib-bin==20.0.1.post1",
    "face-recognition-models==0.3.0",  # dlib's 5-point and ResNet weights, shipped offline
    "setuptools<82",  # face_recognition_models imports pkg_resources
    "opencv-contrib-python-headless==4.14.0.94",  # <5: ships the haar cascades
    "scikit-image==0.26.0",  # astronaut(): the offline sample face
    "numpy>=1.26",
    "pillow>=10",  # image decoding in the prepare step
    "tensorboard==2.21.0",  # not a TF 2.21 dependency any more; tf.summary needs it
    "tqdm>=4.66",
    "matplotlib>=3.8",
]

EXTRAS_REQUIRE = {
    "deepface": [
        "deepface==0.0.103",
        "werkzeug==3.1.9",  # undeclared dependency of deepface 0.0.103
        "tf-keras==2.21.0",  # deepface's TF backend; only ever imported in the worker process
        "mtcnn==1.0.0",
    ],
    # scipy: reference sqrtm in tests; hypothesis: generated bad inputs in the fault tests
    "dev": ["pytest>=8", "ruff>=0.6", "scipy>=1.11", "hypothesis>=6.100",
            "matplotlib>=3.8"],  # matplotlib: the benchmarks' plots
}

# Binaries live in the top-level train/ and export/ folders (tensorflow/models style) and are
# installed as vec2face_tf.bin.train / vec2face_tf.bin.export so that no generic top-level
# package names leak into site-packages.
# Namespace discovery, so that the demo's data folders (model/, model/variables/, student/...)
# are declared too: setuptools warns about every importable folder it is not told about.
PACKAGES = find_namespace_packages(include=["vec2face_tf", "vec2face_tf.*"],
                                   exclude=["*.__pycache__"])
PACKAGES += ["vec2face_tf.bin.train", "vec2face_tf.bin.export"]

setup(
    name="vec2face_tf",
    version=VERSION,
    description="Reconstruct faces from blackbox face-recognition features (DiBiGAN) in TF/Keras",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=PACKAGES,
    package_dir={"vec2face_tf.bin.train": "train", "vec2face_tf.bin.export": "export"},
    include_package_data=True,
    # The demo model we trained (scripts/build_demo.sh): generator and student SavedModels,
    # config, evaluation.
    package_data={"vec2face_tf.demo": ["model/*.pb", "model/variables/*", "model/assets/*",
                                       "student/*.pb", "student/variables/*",
                                       "student/assets/*", "*.json", "*.md", "*.png"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "vec2face-prepare=vec2face_tf.bin.train.prepare:run",
            "vec2face-train=vec2face_tf.bin.train.train:run",
            "vec2face-eval=vec2face_tf.bin.train.evaluate:run",
            "vec2face-invert=vec2face_tf.bin.train.invert:run",
            "vec2face-audit=vec2face_tf.bin.train.audit:run",
            "vec2face-export=vec2face_tf.bin.export.export:run",
            "vec2face-export-savedmodel=vec2face_tf.bin.export.export_savedmodel:run",
            "vec2face-export-tflite=vec2face_tf.bin.export.export_tflite:run",
            "vec2face-export-onnx=vec2face_tf.bin.export.export_onnx:run",
        ],
    },
)
