//! A libext2fs I/O manager over imprint's own [`Device`]: libext2fs reads
//! and writes the filesystem through these callbacks, so the image is
//! never expanded or written in place (see `changed_blocks.rs` for the
//! device the backends use).
//!
//! This is the one place imprint shares struct layouts with libext2fs:
//! `struct struct_io_manager` and `struct struct_io_channel` from
//! <ext2fs/ext2_io.h>. Both are the public interface for I/O managers
//! (undo_io, test_io and out-of-tree ones use it), have only ever grown
//! by taking from their `reserved` arrays, and keep their size.
//!
//! The callbacks run inside libext2fs, on numbers a damaged image may have
//! chosen: they never panic on arithmetic (checked, with an error code
//! back), and each body runs under `catch_unwind`, because unwinding into C
//! aborts the process.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_long, c_ulong, c_ulonglong, c_void};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// libext2fs's `errcode_t`.
pub(crate) type Errcode = c_long;

// From <ext2fs/ext2_err.h> (EXT2_ET_BASE 2133571328 plus the index).
const MAGIC_IO_CHANNEL: Errcode = 2133571333;
const MAGIC_IO_MANAGER: Errcode = 2133571335;
const ET_SHORT_READ: Errcode = 2133571364;
const ET_SHORT_WRITE: Errcode = 2133571365;
const ET_BAD_DEVICE_NAME: Errcode = 2133571386;
/// "IO Channel failed to seek on read or write": an offset that does not
/// fit in 64 bits.
const ET_LLSEEK_FAILED: Errcode = 2133571397;
const ET_INVALID_ARGUMENT: Errcode = 2133571399;

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
pub(crate) struct IoManager {
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

// SAFETY: the manager is a table of constant pointers.
unsafe impl Sync for IoManager {}

/// The manager handed to ext2fs_open2 together with [`with_device`].
pub(crate) static MANAGER: IoManager = IoManager {
    magic: MAGIC_IO_MANAGER,
    name: c"imprint I/O manager".as_ptr(),
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
pub(crate) trait Device {
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

/// Offers a device to `open` for as long as it lives: dropping it (also
/// on an early return or a panic) withdraws the offer, so no later open
/// on this thread can reach a device that is gone.
struct PendingDevice {
    previous: Option<*mut Backing>,
}

impl PendingDevice {
    fn offer(backing: *mut Backing) -> PendingDevice {
        PendingDevice {
            previous: PENDING.with(|p| p.replace(Some(backing))),
        }
    }
}

impl Drop for PendingDevice {
    fn drop(&mut self) {
        PENDING.with(|p| p.set(self.previous));
    }
}

/// Runs `body` (which calls ext2fs_open2 with [`MANAGER`] and works on the
/// filesystem) with `device` behind the channel. Returns the body's result
/// and the first I/O error the device reported, if any.
pub(crate) fn with_device<T>(
    device: &mut dyn Device,
    body: impl FnOnce() -> T,
) -> (T, Option<io::Error>) {
    let device: *mut (dyn Device + '_) = device;
    // SAFETY (of the lifetime erasure): the pointer is reachable only
    // through PENDING, which the guard below clears before this function
    // returns, and through channels opened inside `body`, which imprint
    // closes or frees before `body` returns.
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
    let pending = PendingDevice::offer(&mut backing);
    let result = body();
    drop(pending);
    (result, backing.error)
}

/// Where a transfer of `count` at `block` starts and how many bytes it
/// moves (a negative count is a byte count, else a number of blocks), or
/// None when that does not fit in the address space.
fn span(block_size: c_int, block: u64, count: c_int) -> Option<(u64, usize)> {
    let block_size = u64::try_from(block_size).ok().filter(|&b| b > 0)?;
    let len = match u64::try_from(count) {
        Ok(blocks) => blocks.checked_mul(block_size)?,
        Err(_) => u64::from(count.unsigned_abs()),
    };
    let offset = block.checked_mul(block_size)?;
    offset.checked_add(len)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= isize::MAX as usize)?;
    Some((offset, len))
}

/// The backing of a channel this manager opened, or None for anything
/// else.
///
/// # Safety
/// `channel` is null or points to a live `IoChannel`.
unsafe fn backing<'a>(channel: Channel) -> Option<&'a mut Backing> {
    // SAFETY: channel is null or live (the caller's promise); our channels
    // carry our manager and a Backing that outlives them (with_device).
    unsafe {
        let channel = channel.as_ref()?;
        if channel.magic != MAGIC_IO_CHANNEL || !std::ptr::eq(channel.manager, &MANAGER) {
            return None;
        }
        (channel.private_data as *mut Backing).as_mut()
    }
}

/// Runs a callback's body: its error code, 0 for success, or `on_panic`
/// when it panicked (noted as the device's error, for the caller to
/// report).
///
/// # Safety
/// `channel` is null or points to a live `IoChannel`.
unsafe fn guarded(
    channel: Channel,
    on_panic: Errcode,
    body: impl FnOnce() -> Result<(), Errcode>,
) -> Errcode {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(code)) => code,
        Err(_) => {
            // SAFETY: as promised by the caller.
            if let Some(backing) = unsafe { backing(channel) } {
                backing.error.get_or_insert_with(|| {
                    io::Error::other("imprint's I/O manager panicked (a bug in imprint)")
                });
            }
            on_panic
        }
    }
}

unsafe extern "C" fn open(_name: *const c_char, _flags: c_int, out: *mut Channel) -> Errcode {
    // SAFETY: null channel: nothing to note a panic on.
    unsafe {
        guarded(std::ptr::null_mut(), ET_BAD_DEVICE_NAME, || {
            let backing = PENDING.with(|p| p.get()).ok_or(ET_BAD_DEVICE_NAME)?;
            if out.is_null() {
                return Err(ET_INVALID_ARGUMENT);
            }
            let channel = Box::new(IoChannel {
                magic: MAGIC_IO_CHANNEL,
                manager: &MANAGER,
                name: c"imprint".as_ptr() as *mut c_char,
                block_size: 1024,
                read_error: std::ptr::null(),
                write_error: std::ptr::null(),
                refcount: 1,
                flags: 0,
                reserved: [0; 14],
                private_data: backing.cast(),
                app_data: std::ptr::null_mut(),
                align: 0,
            });
            // SAFETY: out is non-null and libext2fs passes a writable slot.
            *out = Box::into_raw(channel);
            Ok(())
        })
    }
}

unsafe extern "C" fn close(channel: Channel) -> Errcode {
    // SAFETY: libext2fs passes a channel it got from `open`.
    unsafe {
        guarded(channel, MAGIC_IO_CHANNEL, || {
            backing(channel).ok_or(MAGIC_IO_CHANNEL)?;
            (*channel).refcount = (*channel).refcount.saturating_sub(1);
            if (*channel).refcount <= 0 {
                // SAFETY: a channel of ours (checked above) came from
                // Box::into_raw in `open`; libext2fs drops it here.
                drop(Box::from_raw(channel));
            }
            Ok(())
        })
    }
}

unsafe extern "C" fn set_blksize(channel: Channel, size: c_int) -> Errcode {
    // SAFETY: libext2fs passes a channel it got from `open`.
    unsafe {
        guarded(channel, ET_INVALID_ARGUMENT, || {
            backing(channel).ok_or(MAGIC_IO_CHANNEL)?;
            if size <= 0 {
                return Err(ET_INVALID_ARGUMENT);
            }
            (*channel).block_size = size;
            Ok(())
        })
    }
}

unsafe extern "C" fn flush(_channel: Channel) -> Errcode {
    0
}

unsafe extern "C" fn get_stats(channel: Channel, out: *mut *mut IoStats) -> Errcode {
    // SAFETY: libext2fs passes a channel it got from `open`.
    unsafe {
        guarded(channel, MAGIC_IO_CHANNEL, || {
            let backing = backing(channel).ok_or(MAGIC_IO_CHANNEL)?;
            if !out.is_null() {
                *out = &mut backing.stats;
            }
            Ok(())
        })
    }
}

unsafe extern "C" fn read_blk64(
    channel: Channel,
    block: c_ulonglong,
    count: c_int,
    data: *mut c_void,
) -> Errcode {
    // SAFETY: libext2fs passes a channel it got from `open` and a buffer
    // for the transfer's bytes.
    unsafe {
        guarded(channel, ET_SHORT_READ, || {
            let backing = backing(channel).ok_or(MAGIC_IO_CHANNEL)?;
            let (offset, len) =
                span((*channel).block_size, block, count).ok_or(ET_LLSEEK_FAILED)?;
            if len == 0 {
                return Ok(());
            }
            if data.is_null() {
                return Err(ET_INVALID_ARGUMENT);
            }
            let buf = std::slice::from_raw_parts_mut(data.cast::<u8>(), len);
            match (*backing.device).read_at(offset, buf) {
                Ok(()) => {
                    backing.stats.bytes_read = backing.stats.bytes_read.saturating_add(len as u64);
                    Ok(())
                }
                Err(e) => {
                    backing.error.get_or_insert(e);
                    Err(ET_SHORT_READ)
                }
            }
        })
    }
}

unsafe extern "C" fn write_blk64(
    channel: Channel,
    block: c_ulonglong,
    count: c_int,
    data: *const c_void,
) -> Errcode {
    // SAFETY: libext2fs passes a channel it got from `open` and the
    // transfer's bytes.
    unsafe {
        guarded(channel, ET_SHORT_WRITE, || {
            let backing = backing(channel).ok_or(MAGIC_IO_CHANNEL)?;
            let (offset, len) =
                span((*channel).block_size, block, count).ok_or(ET_LLSEEK_FAILED)?;
            if len == 0 {
                return Ok(());
            }
            if data.is_null() {
                return Err(ET_INVALID_ARGUMENT);
            }
            let buf = std::slice::from_raw_parts(data.cast::<u8>(), len);
            match (*backing.device).write_at(offset, buf) {
                Ok(()) => {
                    backing.stats.bytes_written =
                        backing.stats.bytes_written.saturating_add(len as u64);
                    Ok(())
                }
                Err(e) => {
                    backing.error.get_or_insert(e);
                    Err(ET_SHORT_WRITE)
                }
            }
        })
    }
}

unsafe extern "C" fn read_blk(
    channel: Channel,
    block: c_ulong,
    count: c_int,
    data: *mut c_void,
) -> Errcode {
    // SAFETY: the same contract as read_blk64.
    unsafe { read_blk64(channel, c_ulonglong::from(block), count, data) }
}

unsafe extern "C" fn write_blk(
    channel: Channel,
    block: c_ulong,
    count: c_int,
    data: *const c_void,
) -> Errcode {
    // SAFETY: the same contract as write_blk64.
    unsafe { write_blk64(channel, c_ulonglong::from(block), count, data) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_that_do_not_fit_are_refused() {
        assert_eq!(span(4096, 3, 2), Some((3 * 4096, 8192)));
        assert_eq!(span(4096, 3, -100), Some((3 * 4096, 100)));
        assert_eq!(span(1024, 0, c_int::MIN), Some((0, 1 << 31)));
        assert_eq!(span(0, 1, 1), None);
        assert_eq!(span(-1024, 1, 1), None);
        assert_eq!(span(4096, u64::MAX / 4096 + 1, 1), None);
        assert_eq!(span(4096, u64::MAX / 4096, 1), None);
        assert_eq!(
            span(c_int::MAX, 0, c_int::MAX),
            Some((0, 0x3FFF_FFFF_0000_0001))
        );
    }

    #[test]
    fn the_pending_device_is_withdrawn_even_after_a_panic() {
        struct Nothing;
        impl Device for Nothing {
            fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
                Ok(())
            }
            fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
                Ok(())
            }
        }
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            with_device(&mut Nothing, || {
                assert!(PENDING.with(|p| p.get()).is_some());
                panic!("inside the body");
            })
        }));
        assert!(panicked.is_err());
        assert!(PENDING.with(|p| p.get()).is_none());
        let mut channel: Channel = std::ptr::null_mut();
        // SAFETY: out is a valid slot; no device is pending.
        let code = unsafe { open(c"x".as_ptr(), 0, &mut channel) };
        assert_eq!(code, ET_BAD_DEVICE_NAME);
        assert!(channel.is_null());
    }

    #[test]
    fn callbacks_refuse_overflowing_transfers_without_panicking() {
        struct Zeros;
        impl Device for Zeros {
            fn read_at(&self, _: u64, buf: &mut [u8]) -> io::Result<()> {
                buf.fill(0);
                Ok(())
            }
            fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
                Ok(())
            }
        }
        let ((), error) = with_device(&mut Zeros, || {
            let mut channel: Channel = std::ptr::null_mut();
            let mut buf = [1u8; 8];
            // SAFETY: the channel comes from `open` and is closed last.
            unsafe {
                assert_eq!(open(c"x".as_ptr(), 0, &mut channel), 0);
                assert_eq!(set_blksize(channel, 0), ET_INVALID_ARGUMENT);
                assert_eq!(set_blksize(channel, 4096), 0);
                let far = u64::MAX / 2;
                assert_eq!(
                    read_blk64(channel, far, 1, buf.as_mut_ptr().cast()),
                    ET_LLSEEK_FAILED
                );
                assert_eq!(
                    write_blk64(channel, far, 1, buf.as_ptr().cast()),
                    ET_LLSEEK_FAILED
                );
                assert_eq!(read_blk64(channel, 0, -8, buf.as_mut_ptr().cast()), 0);
                assert_eq!(close(channel), 0);
            }
            assert_eq!(buf, [0u8; 8]);
        });
        assert!(error.is_none());
    }

    #[test]
    fn a_panicking_device_becomes_an_error_code_and_a_reported_error() {
        struct Panics;
        impl Device for Panics {
            fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
                panic!("device bug");
            }
            fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
                panic!("device bug");
            }
        }
        let ((), error) = with_device(&mut Panics, || {
            let mut channel: Channel = std::ptr::null_mut();
            let mut buf = [0u8; 1024];
            // SAFETY: the channel comes from `open` and is closed last.
            unsafe {
                assert_eq!(open(c"x".as_ptr(), 0, &mut channel), 0);
                assert_eq!(
                    read_blk64(channel, 1, 1, buf.as_mut_ptr().cast()),
                    ET_SHORT_READ
                );
                assert_eq!(
                    write_blk64(channel, 1, 1, buf.as_ptr().cast()),
                    ET_SHORT_WRITE
                );
                assert_eq!(close(channel), 0);
            }
        });
        assert!(error.unwrap().to_string().contains("panicked"));
    }
}
