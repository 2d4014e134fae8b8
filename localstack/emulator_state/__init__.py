"""What the emulators share: saving their state file behind their writes (writebehind)."""
