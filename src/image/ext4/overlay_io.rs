//! A libext2fs I/O manager over imprint's own device: reads come from a
//! read-only source (an Android sparse image through its chunk index),
//! writes stay in memory as an overlay of changed blocks. libext2fs edits
//! the filesystem without the image ever being expanded, and the writer
//! then knows exactly which blocks changed.
//!
//! This is the one place imprint shares struct layouts with libext2fs:
//! `struct struct_io_manager` and `struct struct_io_channel` from
//! <ext2fs/ext2_io.h>. Both are the public interface for I/O managers
//! (undo_io, test_io and out-of-tree ones use it), have only ever grown
//! by taking from their `reserved` arrays, and keep their size.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_long, c_ulong, c_ulonglong, c_void};
use std::io;

use super::disk::ReadAt;

/// libext2fs's `errcode_t`.
pub(super) type Errcode = c_long;

const MAGIC_IO_CHANNEL: Errcode = 2133571333;
const MAGIC_IO_MANAGER: Errcode = 2133571335;
const ET_SHORT_READ: Errcode = 2133571364;
const ET_SHORT_WRITE: Errcode = 2133571365;
const ET_BAD_DEVICE_NAME: Errcode = 2133571386;

/// `struct struct_io_channel`.
#[repr(C)]
struct IoChannel {
    magic: Errcode,
    manager: *const IoManager,
    name: *mut c_char,
    block_size: c_int,
    read_error: *const c_void,
    write_error: *const c_void,
    refcount: c_int,
    flags: c_int,
    reserved: [c_long; 14],
    private_data: *mut c_void,
    app_data: *mut c_void,
    align: c_int,
}

type Channel = *mut IoChannel;

/// `struct struct_io_stats`: libext2fs adds `bytes_written` to the
/// superblock's lifetime-writes counter on close.
#[repr(C)]
struct IoStats {
    num_fields: c_int,
    reserved: c_int,
    bytes_read: u64,
    bytes_written: u64,
}

/// `struct struct_io_manager`.
#[repr(C)]
pub struct IoManager {
    magic: Errcode,
    name: *const c_char,
    open: Option<unsafe extern "C" fn(*const c_char, c_int, *mut Channel) -> Errcode>,
    close: Option<unsafe extern "C" fn(Channel) -> Errcode>,
    set_blksize: Option<unsafe extern "C" fn(Channel, c_int) -> Errcode>,
    read_blk: Option<unsafe extern "C" fn(Channel, c_ulong, c_int, *mut c_void) -> Errcode>,
    write_blk: Option<unsafe extern "C" fn(Channel, c_ulong, c_int, *const c_void) -> Errcode>,
    flush: Option<unsafe extern "C" fn(Channel) -> Errcode>,
    write_byte: Option<unsafe extern "C" fn(Channel, c_ulong, c_int, *const c_void) -> Errcode>,
    set_option: Option<unsafe extern "C" fn(Channel, *const c_char, *const c_char) -> Errcode>,
    get_stats: Option<unsafe extern "C" fn(Channel, *mut *mut IoStats) -> Errcode>,
    read_blk64: Option<unsafe extern "C" fn(Channel, c_ulonglong, c_int, *mut c_void) -> Errcode>,
    write_blk64:
        Option<unsafe extern "C" fn(Channel, c_ulonglong, c_int, *const c_void) -> Errcode>,
    discard: Option<unsafe extern "C" fn(Channel, c_ulonglong, c_ulonglong) -> Errcode>,
    cache_readahead: Option<unsafe extern "C" fn(Channel, c_ulonglong, c_ulonglong) -> Errcode>,
    zeroout: Option<unsafe extern "C" fn(Channel, c_ulonglong, c_ulonglong) -> Errcode>,
    reserved: [c_long; 14],
}

// The manager is a table of constant pointers.
unsafe impl Sync for IoManager {}

/// The manager handed to ext2fs_open2 together with [`with_device`].
pub static MANAGER: IoManager = IoManager {
    magic: MAGIC_IO_MANAGER,
    name: c"imprint overlay I/O manager".as_ptr(),
    open: Some(open),
    close: Some(close),
    set_blksize: Some(set_blksize),
    read_blk: Some(read_blk),
    write_blk: Some(write_blk),
    flush: Some(flush),
    write_byte: None,
    set_option: None,
    get_stats: Some(get_stats),
    read_blk64: Some(read_blk64),
    write_blk64: Some(write_blk64),
    discard: None,
    cache_readahead: None,
    zeroout: None,
    reserved: [0; 14],
};

/// What libext2fs reads and writes through [`MANAGER`].
pub trait Device {
    fn size(&self) -> u64;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// The state behind a channel: the device and the first I/O error, kept
/// so the caller can report it rather than libext2fs's generic code.
struct Backing {
    device: *mut dyn Device,
    error: Option<io::Error>,
    stats: IoStats,
}

thread_local! {
    /// The device the next `open` on this thread attaches to.
    static PENDING: Cell<Option<*mut Backing>> = const { Cell::new(None) };
}

/// Runs `body` (which calls ext2fs_open2 with [`MANAGER`] and works on the
/// filesystem) with `device` behind the channel. Returns the body's result
/// and the first I/O error the device reported, if any.
pub fn with_device<T>(device: &mut dyn Device, body: impl FnOnce() -> T) -> (T, Option<io::Error>) {
    // SAFETY (of the lifetime erasure): the pointer is used only by
    // channels opened inside `body`, and imprint closes or frees the
    // filesystem before `body` returns.
    let device: *mut (dyn Device + '_) = device;
    let device: *mut dyn Device = unsafe { std::mem::transmute(device) };
    let mut backing = Backing {
        device,
        error: None,
        stats: IoStats {
            num_fields: 2,
            reserved: 0,
            bytes_read: 0,
            bytes_written: 0,
        },
    };
    PENDING.with(|p| p.set(Some(&mut backing)));
    let result = body();
    PENDING.with(|p| p.set(None));
    (result, backing.error)
}

unsafe fn backing<'a>(channel: Channel) -> &'a mut Backing {
    &mut *((*channel).private_data as *mut Backing)
}

/// Bytes in a transfer: a negative count is a byte count, else blocks.
unsafe fn transfer_len(channel: Channel, count: c_int) -> u64 {
    if count < 0 {
        u64::from(count.unsigned_abs())
    } else {
        count as u64 * (*channel).block_size as u64
    }
}

unsafe extern "C" fn open(_name: *const c_char, _flags: c_int, out: *mut Channel) -> Errcode {
    let Some(backing) = PENDING.with(|p| p.get()) else {
        return ET_BAD_DEVICE_NAME;
    };
    let channel = Box::new(IoChannel {
        magic: MAGIC_IO_CHANNEL,
        manager: &MANAGER,
        name: c"imprint-overlay".as_ptr() as *mut c_char,
        block_size: 1024,
        read_error: std::ptr::null(),
        write_error: std::ptr::null(),
        refcount: 1,
        flags: 0,
        reserved: [0; 14],
        private_data: backing as *mut c_void,
        app_data: std::ptr::null_mut(),
        align: 0,
    });
    *out = Box::into_raw(channel);
    0
}

unsafe extern "C" fn close(channel: Channel) -> Errcode {
    (*channel).refcount -= 1;
    if (*channel).refcount <= 0 {
        drop(Box::from_raw(channel));
    }
    0
}

unsafe extern "C" fn set_blksize(channel: Channel, size: c_int) -> Errcode {
    (*channel).block_size = size;
    0
}

unsafe extern "C" fn flush(_channel: Channel) -> Errcode {
    0
}

unsafe extern "C" fn get_stats(channel: Channel, out: *mut *mut IoStats) -> Errcode {
    if !out.is_null() {
        *out = &mut backing(channel).stats;
    }
    0
}

unsafe extern "C" fn read_blk64(
    channel: Channel,
    block: c_ulonglong,
    count: c_int,
    data: *mut c_void,
) -> Errcode {
    let len = transfer_len(channel, count) as usize;
    let offset = block * (*channel).block_size as u64;
    let buf = std::slice::from_raw_parts_mut(data as *mut u8, len);
    let backing = backing(channel);
    match (*backing.device).read_at(offset, buf) {
        Ok(()) => {
            backing.stats.bytes_read += len as u64;
            0
        }
        Err(e) => {
            backing.error.get_or_insert(e);
            ET_SHORT_READ
        }
    }
}

unsafe extern "C" fn write_blk64(
    channel: Channel,
    block: c_ulonglong,
    count: c_int,
    data: *const c_void,
) -> Errcode {
    let len = transfer_len(channel, count) as usize;
    let offset = block * (*channel).block_size as u64;
    let buf = std::slice::from_raw_parts(data as *const u8, len);
    let backing = backing(channel);
    match (*backing.device).write_at(offset, buf) {
        Ok(()) => {
            backing.stats.bytes_written += len as u64;
            0
        }
        Err(e) => {
            backing.error.get_or_insert(e);
            ET_SHORT_WRITE
        }
    }
}

unsafe extern "C" fn read_blk(
    channel: Channel,
    block: c_ulong,
    count: c_int,
    data: *mut c_void,
) -> Errcode {
    read_blk64(channel, block as c_ulonglong, count, data)
}

unsafe extern "C" fn write_blk(
    channel: Channel,
    block: c_ulong,
    count: c_int,
    data: *const c_void,
) -> Errcode {
    write_blk64(channel, block as c_ulonglong, count, data)
}

/// A read-only base device with the blocks written to it kept in memory,
/// `block` bytes at a time (the sparse image's block size).
pub struct Overlay<R> {
    base: R,
    size: u64,
    block: u64,
    written: BTreeMap<u64, Box<[u8]>>,
}

impl<R: ReadAt> Overlay<R> {
    pub fn new(base: R, size: u64, block: u32) -> Self {
        Overlay {
            base,
            size,
            block: u64::from(block),
            written: BTreeMap::new(),
        }
    }

    pub fn base(&self) -> &R {
        &self.base
    }

    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// The blocks written, by block number, in order.
    pub fn written(&self) -> &BTreeMap<u64, Box<[u8]>> {
        &self.written
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "libext2fs asked for bytes {offset}..+{len} of a {}-byte image",
                    self.size
                ),
            )),
        }
    }

    /// Splits `offset..offset+len` into (block, offset in block, length).
    fn pieces(&self, offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let block = self.block;
        let end = offset + len as u64;
        let mut at = offset;
        std::iter::from_fn(move || {
            (at < end).then(|| {
                let b = at / block;
                let within = (at % block) as usize;
                let n = ((block - within as u64).min(end - at)) as usize;
                at += n as u64;
                (b, within, n)
            })
        })
    }
}

impl<R: ReadAt> Device for Overlay<R> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        let mut done = 0;
        for (b, within, n) in self.pieces(offset, buf.len()) {
            let out = &mut buf[done..done + n];
            match self.written.get(&b) {
                Some(data) => out.copy_from_slice(&data[within..within + n]),
                None => self.base.read_at(b * self.block + within as u64, out)?,
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        let mut done = 0;
        for (b, within, n) in self.pieces(offset, data.len()).collect::<Vec<_>>() {
            if !self.written.contains_key(&b) {
                let mut old = vec![0u8; self.block as usize].into_boxed_slice();
                if n < self.block as usize {
                    self.base.read_at(b * self.block, &mut old)?;
                }
                self.written.insert(b, old);
            }
            let block = self.written.get_mut(&b).expect("just inserted");
            block[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_reads_back_writes_over_the_base() {
        let base: Vec<u8> = (0..64u8).collect();
        let mut o = Overlay::new(base.clone(), 64, 16);
        o.write_at(10, &[0xff; 12]).unwrap();
        let mut all = vec![0u8; 64];
        o.read_at(0, &mut all).unwrap();
        let mut want = base.clone();
        want[10..22].fill(0xff);
        assert_eq!(all, want);
        assert_eq!(o.written().keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert!(o.read_at(60, &mut [0u8; 8]).is_err());
        assert!(o.write_at(u64::MAX - 2, &[1]).is_err());
    }
}
