"""fedge's quantization package."""
