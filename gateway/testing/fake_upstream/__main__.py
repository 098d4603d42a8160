"""Entry point for ``python -m gateway.testing.fake_upstream``."""

from gateway.testing.fake_upstream.server import main

if __name__ == "__main__":
    main()
