"""Reports and exports shared by GUI, CLI and batch: PDF, PNG overlays, DICOM SC/SEG,
all de-identified by default and written atomically."""
