"""`python -m app.api`: serve the REST API under uvicorn."""

import sys

from app.api.app import main

sys.exit(main())
