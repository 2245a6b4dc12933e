"""tuner_store"""
