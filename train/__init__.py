"""absl binaries: flags only; the logic lives in the vec2face_tf library."""
