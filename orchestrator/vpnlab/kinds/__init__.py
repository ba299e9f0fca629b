"""Node kinds: small plug-ins that turn a resolved Node into a ContainerSpec (see registry.py)."""
