"""`python -m tests.support.daytona --port 3986`: the emulator on its own."""

from tests.support.daytona.app import main

main()
