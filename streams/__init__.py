"""The PyFlink job: domain events to Weaviate chunks and training examples."""
