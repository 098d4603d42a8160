"""Entry point for ``python -m gateway.fake_upstream``."""

from gateway.fake_upstream.server import main

if __name__ == "__main__":
    main()
