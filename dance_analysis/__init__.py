"""dance-analysis: train ANCE / DANCE dense retrievers and analyse their embedding spaces."""

__version__ = "0.1.0"
