"""The peer pipeline: geolocate, anonymise and bin sightings, then write them in batches."""
