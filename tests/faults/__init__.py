"""The fault suite: faults injected on purpose against real parts, each with its figure."""
