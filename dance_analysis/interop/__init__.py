"""Interop at the edges: trained models as sentence-transformers folders, mined negatives as other trainers'
training data. Nothing else in the package imports these modules; sentence-transformers is imported only by the
model export, when it runs."""
