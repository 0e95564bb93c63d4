"""What the backend hands back: meshes (marching cubes + PLY) and rendered frames."""
