"""Every way a capture reaches the kit: DIMSE C-STORE, uploads, folder/USB import (layer 3).
STOW-RS lives with the web layer and calls the same store.instances.put_instance."""
