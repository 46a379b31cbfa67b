"""Small applications that the server tests start under real gunicorn, uvicorn and nginx."""
