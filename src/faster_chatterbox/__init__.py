"""faster-chatterbox: a fast, faithful implementation of Chatterbox TTS."""
