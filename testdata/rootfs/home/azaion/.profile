export PATH=$PATH:/usr/bin
