"""vec2face_tf: reconstruct faces from blackbox face-recognition features (DiBiGAN, CVPR 2020)."""

__version__ = "0.1.0"
