"""Chat with a trained model: in the terminal (`picolm chat`) or on a local web page (`picolm serve`)."""
