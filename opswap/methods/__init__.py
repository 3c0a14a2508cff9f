"""Methods that are not networks: the traditional (hand-crafted features) baseline."""
