"""Session templates: image, GPU, resources, encoder settings and deadlines of a kind of desktop."""
