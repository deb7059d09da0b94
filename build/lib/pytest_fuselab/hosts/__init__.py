"""Many machines: hosts.toml, preparing hosts over SSH (fabric), and pytest-xdist workers on them."""
