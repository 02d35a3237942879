"""The UI's routes, one module per page; each builds an APIRouter over the shared Context."""
