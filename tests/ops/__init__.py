"""Tests of what technicians use on a node: install-node, systemd, the node broker, udev, `hallhub
init`, `device add`, `hallhub doctor` and the status page."""
